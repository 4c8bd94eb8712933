"""End-to-end tests: the command lines, example scripts and download.sh run as processes, and torchrun runs."""
