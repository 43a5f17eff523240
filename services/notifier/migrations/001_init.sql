-- The notifier schema starts with the shared plumbing only.
SELECT 1;
