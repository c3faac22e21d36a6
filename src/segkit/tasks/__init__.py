"""Every command's body: the entry scripts at the repository root each call one function here with their composed
config (train, evaluate, predict, export, check_data, browse_data, bench; common holds what they share)."""
