"""Package discovery (everything else is in pyproject.toml).

Only here because pyproject.toml cannot both discover packages and add one from another folder:
the top-level `migrations/` (Alembic) ships inside the wheel as the package `vtrans_migrations`,
so a machine that installed the package, without a source checkout, can still `vtrans migrate`
(api/db.py finds the checkout's folder first, else this package)."""
from setuptools import find_packages, setup

packages = find_packages(include=["api", "api.*", "worker", "worker.*", "vtrans_core", "vtrans_core.*"])
setup(packages=packages + ["vtrans_migrations", "vtrans_migrations.versions"],
      package_dir={"vtrans_migrations": "migrations"})
