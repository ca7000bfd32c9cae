"""The database (tables, migrations, engine) and the JSON sidecars that mirror it."""
