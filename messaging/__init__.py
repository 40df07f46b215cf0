"""Kafka: client factories, record batches, the partitioner, topic administration. Beside
storage, below the processor and the producer client."""
