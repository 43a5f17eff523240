-- The benchmark schema needs only the shared plumbing (outbox, processed events).
SELECT 1;
