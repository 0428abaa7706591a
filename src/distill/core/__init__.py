"""The foundation layer: errors, settings and config files, checkpoint files, run dirs,
logs and trackers, the distributed helpers, the `module:attr` registry and the table
printer. Imports nothing else of distill."""
