"""Reading runs back: the runs table, plots and HTML/Markdown reports."""
