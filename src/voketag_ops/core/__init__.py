"""Pure logic with no I/O: imports neither typer, rich, psycopg nor google."""
