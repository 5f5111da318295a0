-- Report chunks are stored as they are: compressing each 1 MiB chunk (pglz, on insert) took
-- about a third of the database's time in a large export, and decompressing it again on every
-- download. Affects chunks written from now on.
ALTER TABLE malaka_report_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
