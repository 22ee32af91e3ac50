"""BucketReplicator function: copies each new .xlsx from the source bucket to the destination bucket."""
