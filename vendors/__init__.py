"""Annotation vendors, one module each; a vendor's SDK is imported only in its own module."""
