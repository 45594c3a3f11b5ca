"""WSGI entry point for gunicorn: `gunicorn control_plane.wsgi:app`."""
from control_plane.app import create_app

app = create_app()
