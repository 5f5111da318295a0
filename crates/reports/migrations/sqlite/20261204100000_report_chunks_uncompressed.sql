-- Nothing to do on SQLite (it does not compress blobs); kept so both backends share versions.
SELECT 1;
