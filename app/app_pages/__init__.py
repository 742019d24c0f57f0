"""The app's pages (one file each) and their shared widgets (`components`)."""
