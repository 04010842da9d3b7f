"""Offline feature tools: converters, synthetic stores and extractors that write the feature store."""
