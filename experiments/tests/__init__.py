"""The experiments' tests: a package, so that pytest imports them as experiments.tests.* beside tests/."""
