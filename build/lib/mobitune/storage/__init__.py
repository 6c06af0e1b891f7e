"""Where bytes live: the local and S3 artifact stores (boto3 only here), fetching a file a param names, and
result files written atomically."""
