"""The `fileshare` command line."""
