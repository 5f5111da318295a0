//! Amazon SQS consumer and publisher speaking `malaka-runtime` events (placeholder: arrives with
//! the SQS issue).
