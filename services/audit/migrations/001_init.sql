-- The audit schema starts with the shared plumbing only.
SELECT 1;
