"""How this process runs: the process group, device and dtype choice (pure), rank lifetime and
"rank 0 speaks", the memory budget, environment knobs and progress bars."""
