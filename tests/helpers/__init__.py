"""What the tests share besides conftest.py: datasets written to disk (fake_data), callbacks that interrupt their
own run (interrupt; configs name them as `helpers.interrupt.KillAtStep` with `trusted_modules=[helpers.interrupt]`),
the one list of decoders every decoder test runs through (decoders), and two scripts run outside the suite: the
kill-and-resume soak (`python tests/helpers/soak.py --kills 10`) and `make check-install`'s import of every module
(`python tests/helpers/import_all.py`)."""
