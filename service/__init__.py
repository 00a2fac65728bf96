"""flipfleet's flip service: one waitress process serving a Flask app (service.app:create_app)."""
