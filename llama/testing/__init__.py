"""Made-up models, tokenizers and scores shared by the tests, the benchmarks and the demo trainer."""
