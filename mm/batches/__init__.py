"""OpenAI's Batch API on mm: a JSONL file of requests in, a file of results out.

``files`` keeps uploaded and produced files in a directory; ``lines`` checks an input file and
turns its lines into jobs; ``records`` keeps each batch in Redis as OpenAI describes it;
``outcomes`` is what a worker notes when a batch's job ends; ``advance`` moves batches along
(enqueue, count, finalize, cancel, expire) in the gateway.
"""
