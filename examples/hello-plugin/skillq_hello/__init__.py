"""An example skillq plugin (see `jobs`)."""
