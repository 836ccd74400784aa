"""Thin click commands over the galtools library; shared behaviour lives in galtools.cli.common."""
