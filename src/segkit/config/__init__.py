"""What a config may do, checked before it does it: Hydra's set-up (hydra_setup: the config folder, the
`${segkit.*}` resolvers), misspelled keys and bad values (checks), device settings (devices) and the `_target_`
allow-list (trust).

The entry scripts import `segkit.config.checks` and `segkit.config.hydra_setup` before torch loads: this package
stays light.
"""
