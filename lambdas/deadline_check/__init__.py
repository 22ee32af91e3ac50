"""DeadlineCheck: announces a scheduled workbook that is not in the destination by its deadline."""
