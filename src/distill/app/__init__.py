"""The application layer: what a config builds (`build`), its checks (`validate`,
`problems`, `terms`), runs and their stages (`run`, `stages`), the command line (`cli`,
`commands`) and the commands' own work (demos, bench, tune, assess, export, report)."""
