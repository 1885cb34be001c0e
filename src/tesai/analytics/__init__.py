"""Market and fleet analytics: rollups kept by periodic tasks, reports with pandas."""
