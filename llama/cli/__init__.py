"""The command lines: flag checking and --help, one error line per failure, the example scripts'
shared front end, the interactive chat and the offline tools (reshard, convert, quantize)."""
