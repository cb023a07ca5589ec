"""What every part uses: devices and precision, processes, signals, files, plots, progress bars and
optional packages."""
