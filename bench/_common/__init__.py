"""Helpers shared by the benchmark scripts in bench/; a package, so `make bench` never runs them."""
