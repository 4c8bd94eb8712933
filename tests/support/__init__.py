"""What the tests share besides fixtures: helpers to import, and the scripts some tests run as processes."""
