"""Taking over from other certificate managers: certbot's ``/etc/letsencrypt`` (:mod:`.certbot`)."""
