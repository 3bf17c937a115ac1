"""iservice: the OpenVPN Interactive Service, for Linux."""

__version__ = "0.1.0"
