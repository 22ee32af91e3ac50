"""ExportToXlsx function: runs configured SQL queries and uploads each result as an .xlsx workbook."""
