"""One pass over the managed certificates: observe (:mod:`.observe`), decide (:mod:`.policy`, pure), issue,
install, reload (:mod:`.hooks`), verify (:mod:`.verify`), roll back (:mod:`.lifecycle`)."""
