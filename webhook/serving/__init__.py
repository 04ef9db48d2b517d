"""The serving base of the webhook and the page: gunicorn over TLS with certificates reloaded
when their bytes change. Used by both servers, so it imports neither."""
