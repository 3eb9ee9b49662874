"""LoREIN: a low-rank representation (LRR) block fitted jointly with SUMMIT's parametric-map INR (PMR block)."""
