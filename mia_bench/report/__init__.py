"""Tables, plots and W&B logging of benchmark results."""
