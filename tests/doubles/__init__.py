"""Test doubles: stand-ins for third-party libraries CI does not install, written from scratch."""
