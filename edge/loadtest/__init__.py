"""Load and fault testing of edged: protocol clients, the soak, the fuzzer."""
