"""Tests of audiosocket_gw.store."""
