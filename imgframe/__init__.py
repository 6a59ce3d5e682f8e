"""imgframe: audit a fleet of Glance v1 images as one typed pandas DataFrame."""
