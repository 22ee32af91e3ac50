"""The CDK side of the pipeline: config, constructs, bundling and the stack."""
