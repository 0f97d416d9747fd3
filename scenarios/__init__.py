"""Run ballonet's processes together: launching, demos and (later) scenario files."""
