//! Benchmarks of sotad against its peers. Each benchmark runs the peer side by side in one run and prints the ratio.
