"""Self-contained HTML reports of screening runs, with drift over nights."""
