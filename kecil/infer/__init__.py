"""Running a model: one backend interface, a llama.cpp and a torch implementation."""
