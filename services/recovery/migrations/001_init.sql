-- The recovery schema starts with the shared plumbing only.
SELECT 1;
