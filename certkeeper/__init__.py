"""certkeeper: keeps the TLS certificates of mail servers valid, installed, served and watched."""



def __getattr__(name: str) -> str:
    """``__version__``, read from the package metadata on first use: importlib.metadata costs every start
    (``certkeeper renew`` from cron) some 15 ms, and only ``--version`` and the ACME user agent need it."""
    if name != "__version__":
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("certkeeper")
    except PackageNotFoundError:  # running from a source tree that was never installed
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
